DROP TABLE agent_deltas;
