DROP TABLE agent_calls;
DROP TABLE agent_rate_limits;
