-- The console and HTTP API (docs/api.md): API tokens, login sessions, the audit log, and the
-- signatures of webhooks already accepted. None of these tables is written by a worker.

-- A token is shown once, when it is created; only its SHA-256 is kept (a token is 256 random
-- bits, so a plain hash is as strong as a slow one and lets the lookup be an index probe).
CREATE TABLE IF NOT EXISTS api_tokens (
    id           uuid        PRIMARY KEY,
    name         text        NOT NULL UNIQUE,
    hash         text        NOT NULL UNIQUE,
    scopes       text[]      NOT NULL CHECK (scopes <@ ARRAY['read', 'publish', 'admin']::text[]
                                             AND cardinality(scopes) > 0),
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- A browser's login: the cookie carries a random id whose hash is the key; the session acts
-- with its token's scopes and ends when the token is revoked (the lookup joins the token).
-- Kept in Postgres so that any copy of the console behind a load balancer knows every session.
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash    text        PRIMARY KEY,
    token_id   uuid        NOT NULL REFERENCES api_tokens (id) ON DELETE CASCADE,
    -- Sent back by the page with every state-changing request (the double-submit defence
    -- against cross-site requests, on top of the SameSite=Strict cookie).
    csrf       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_token_idx ON console_sessions (token_id);

-- Every state-changing action taken through the console, the API or `warren tokens`.
CREATE TABLE IF NOT EXISTS audit_log (
    id      bigserial   PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text        NOT NULL,
    action  text        NOT NULL,
    target  text,
    detail  jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON audit_log (at DESC);

-- Webhook signatures accepted within their timestamp tolerance: the same signed request sent
-- again is a replay and is refused. Rows older than the tolerance are deleted as new ones come.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    source         text        NOT NULL,
    signature_hash text        NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, signature_hash)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_received_idx ON webhook_deliveries (received_at);
