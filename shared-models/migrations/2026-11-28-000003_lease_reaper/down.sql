DROP INDEX runs_expired_leases;
