DROP TABLE run_usage;
DROP TABLE agent_turns;
