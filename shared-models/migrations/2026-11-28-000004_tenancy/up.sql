-- Tenancy: organisations and their API keys. Owned by workflow-service (the /admin routes
-- write them); runtime-service only reads api_keys to authenticate callers.
CREATE TABLE orgs (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

-- Orgs that already own workflows or runs (created before keys existed) become orgs.
INSERT INTO orgs (id, name, created_at)
SELECT org_id, org_id, min(created_at) FROM (
    SELECT org_id, created_at FROM workflows
    UNION ALL
    SELECT org_id, created_at FROM runs
) existing
GROUP BY org_id;

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES orgs (id),
    name        TEXT NOT NULL,
    -- SHA-256 of the whole key, hex. The key itself is shown once and never stored.
    key_hash    TEXT NOT NULL UNIQUE,
    -- The key's first characters, so an operator can tell keys apart in listings.
    key_prefix  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ
);

CREATE INDEX api_keys_by_org ON api_keys (org_id, created_at DESC, id DESC);

-- Runs held back by an org's running cap wait PENDING with a wake_at; the scheduler's pass
-- over due wake-ups (WAITING and held-back PENDING runs) stays a small index scan.
CREATE INDEX runs_due_wakeups ON runs (wake_at) WHERE wake_at IS NOT NULL AND status IN ('WAITING', 'PENDING');
