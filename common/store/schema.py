"""The schema: numbered migrations, applied in order by ``db.migrate_schema``."""

from __future__ import annotations

# Each entry moves the schema from user_version N to N+1.  Never edit a released entry:
# append a new one.
MIGRATIONS: list[str] = [
    # 1: the whole first schema
    """
    CREATE TABLE accounts (
        id               TEXT PRIMARY KEY,
        host             TEXT NOT NULL,
        port             INTEGER NOT NULL,
        user             TEXT,
        password         TEXT,              -- 'enc:'-prefixed when ASYNCMAIL_SECRET_KEY is set
        use_tls          INTEGER,           -- NULL: implicit TLS when port is 465
        starttls         INTEGER NOT NULL DEFAULT 0,
        ttl              INTEGER NOT NULL DEFAULT 300,
        timeout          REAL NOT NULL DEFAULT 30,
        limit_per_second INTEGER,
        limit_per_minute INTEGER,
        limit_per_hour   INTEGER,
        limit_per_day    INTEGER,
        limit_behavior   TEXT NOT NULL DEFAULT 'defer',
        batch_size       INTEGER,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL
    );

    CREATE TABLE messages (
        id                 TEXT PRIMARY KEY,
        account_id         TEXT REFERENCES accounts(id),   -- NULL: the [smtp] default account
        priority           INTEGER NOT NULL DEFAULT 2,
        payload            TEXT NOT NULL,
        created_at         INTEGER NOT NULL,
        updated_at         INTEGER NOT NULL,
        deferred_ts        INTEGER,
        sent_ts            INTEGER,
        error_ts           INTEGER,
        error              TEXT,
        reported_ts        INTEGER,
        -- scheduling: the earliest moment a dispatcher may claim the row
        -- (max of enqueue time, deferred_ts and lease expiry), so claiming is a range scan
        ready_at           REAL NOT NULL,
        enqueued_at        REAL NOT NULL,    -- precise enqueue time, for latency metrics
        lease_owner        TEXT,
        lease_expires      REAL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        smtp_code          INTEGER,
        refused            TEXT,             -- JSON {address: [code, text]} of refused recipients
        possible_duplicate INTEGER NOT NULL DEFAULT 0,
        outcome_at         REAL              -- precise time of the terminal outcome
    );
    -- claiming: per account and priority, the oldest ready rows
    CREATE INDEX messages_claim ON messages(account_id, priority, ready_at)
        WHERE sent_ts IS NULL AND error_ts IS NULL;
    -- reporting: terminal outcomes not yet reported, oldest first
    CREATE INDEX messages_unreported ON messages(outcome_at)
        WHERE reported_ts IS NULL AND outcome_at IS NOT NULL;
    -- retention purge
    CREATE INDEX messages_reported ON messages(reported_ts) WHERE reported_ts IS NOT NULL;

    CREATE TABLE attempts (
        id          INTEGER PRIMARY KEY,
        message_id  TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        account_id  TEXT,
        ts          REAL NOT NULL,
        outcome     TEXT NOT NULL,   -- sent, temporary, permanent, uncertain, deferred, rejected
        smtp_code   INTEGER,
        detail      TEXT,
        duration    REAL,
        process     TEXT
    );
    CREATE INDEX attempts_message ON attempts(message_id, id);
    CREATE INDEX attempts_account_ts ON attempts(account_id, ts);

    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE heartbeats (
        process TEXT PRIMARY KEY,
        kind    TEXT NOT NULL,
        pid     INTEGER NOT NULL,
        ts      REAL NOT NULL
    );
    """,
    # 2: crash-resend visibility (dispatcher).  1 while the lease holder may already have sent
    # the row without its outcome being committed; a claim that finds it set on an expired
    # lease (the holder died) marks the message possible_duplicate.
    """
    ALTER TABLE messages ADD COLUMN maybe_sent INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: the Message-ID header, chosen once at intake (the client's, else <random@domain>) so
    # every attempt and any duplicate carry the same one, and a bounce can find its message.
    # Rows stored before get the one the dispatcher derived for them until now, so a message
    # retried across the upgrade keeps its Message-ID.
    """
    ALTER TABLE messages ADD COLUMN message_id_header TEXT;
    UPDATE messages
        SET message_id_header = legacy_message_id(id, json_extract(payload, '$.message_id'));
    CREATE INDEX messages_message_id_header ON messages(message_id_header);
    """,
    # 4: bounces and suppression (docs/bounces.md).  One suppression list for now; tenants
    # will add their key in front of `address`.
    """
    CREATE TABLE suppressions (
        address     TEXT PRIMARY KEY,   -- lower-cased
        reason      TEXT NOT NULL,      -- hard_bounce, complaint, manual
        status      TEXT,               -- what said so: "550 5.1.1" (SMTP) or "5.1.1" (DSN)
        diagnostic  TEXT,
        first_seen  INTEGER NOT NULL,
        last_seen   INTEGER NOT NULL,
        count       INTEGER NOT NULL DEFAULT 1
    ) WITHOUT ROWID;

    -- the VERP token of the envelope sender bounce+<token>@verp_domain, set at intake while
    -- [bounces] verp_domain is configured
    ALTER TABLE messages ADD COLUMN verp_token TEXT;
    CREATE UNIQUE INDEX messages_verp_token ON messages(verp_token)
        WHERE verp_token IS NOT NULL;

    -- what a delivery status notification said about one recipient of a sent message
    CREATE TABLE bounces (
        id          INTEGER PRIMARY KEY,
        message_id  TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        recipient   TEXT NOT NULL,
        kind        TEXT NOT NULL,      -- hard (5.x.x), soft (4.x.x or no status)
        action      TEXT NOT NULL,      -- failed (reported as "bounced"), delayed (not reported)
        status      TEXT,               -- the DSN's status code, "5.1.1"
        diagnostic  TEXT,
        bounced_ts  REAL NOT NULL,      -- when the DSN was processed
        mail_key    TEXT NOT NULL,      -- the notification it came from (bounce_mails.key)
        reported_ts INTEGER
    );
    CREATE INDEX bounces_message ON bounces(message_id);
    CREATE INDEX bounces_ts ON bounces(bounced_ts);
    CREATE INDEX bounces_unreported ON bounces(id) WHERE reported_ts IS NULL AND action = 'failed';

    -- every mail of the bounce mailbox already handled, recorded before it is moved, so a
    -- connection lost between the two processes nothing twice
    CREATE TABLE bounce_mails (
        key     TEXT PRIMARY KEY,       -- the SHA-256 of its bytes
        result  TEXT NOT NULL,          -- processed, unmatched
        shape   TEXT,                   -- the DSN shape recognised (docs/bounces.md)
        ts      REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX bounce_mails_ts ON bounce_mails(ts);
    """,
    # 5: slow and hostile peers.
    #  accounts.deleted_at: an account deleted while some of its messages still owe a delivery
    #    report (or are in a dispatcher's hands) stays as a tombstone, without its password,
    #    until the reporter's purge finds none left; messages.account_id keeps its foreign key.
    #  accounts.max_recipients_per_transaction: RCPTs per SMTP transaction (RFC 5321 §4.5.3.1.8
    #    requires servers to take at least 100).
    #  messages.rcpt_done: JSON list of recipients a server already accepted in an earlier
    #    transaction of the message (452 or a 4xx for some recipients): never sent to again.
    #  circuits: the per-account circuit breaker, shared by every dispatcher ('' = [smtp]).
    """
    ALTER TABLE accounts ADD COLUMN deleted_at INTEGER;
    ALTER TABLE accounts ADD COLUMN max_recipients_per_transaction INTEGER NOT NULL DEFAULT 100;
    ALTER TABLE messages ADD COLUMN rcpt_done TEXT;
    CREATE TABLE circuits (
        account     TEXT PRIMARY KEY,   -- accounts.id, or '' for the [smtp] default account
        open_until  REAL NOT NULL,      -- no dispatcher claims the account's rows before this
        failures    INTEGER NOT NULL,   -- connection failures in a row
        since       REAL NOT NULL,      -- the first of them
        opened_at   REAL NOT NULL,      -- the last of them (attempts begun earlier: same round)
        reason      TEXT
    );
    """,  # 6: tenants (docs/tenants.md).  Accounts and messages, and everything keyed by their ids,
    #    belong to a tenant, and their ids are unique within it.  SQLite cannot change a
    #    primary key in place: each table is rebuilt (SQLite's documented procedure: a new
    #    table, the rows copied, the old one dropped, the new one renamed, its indexes made
    #    again; foreign keys are off meanwhile, see migrate_schema), every existing row moving
    #    to the tenant 'default'.  Messages keep their rowids (GET /messages cursors are
    #    rowids), attempts and bounces their ids.
    """
    CREATE TABLE tenants (
        id                      TEXT PRIMARY KEY,   -- a slug; 'default' holds the rows from before
        name                    TEXT NOT NULL,
        token_hash              TEXT UNIQUE,        -- SHA-256 (hex) of its API token; NULL: none
        client_sync_url         TEXT,               -- its report upstream ('default': [client])
        client_sync_user        TEXT,
        client_sync_password    TEXT,               -- the three secrets 'enc:'-prefixed when
        client_sync_token       TEXT,               -- ASYNCMAIL_SECRET_KEY is set, like SMTP
        client_sync_signing_key TEXT,               -- passwords
        report_format           TEXT NOT NULL DEFAULT 'delivery_report',
        limit_per_minute        INTEGER,            -- sends across all its accounts
        limit_per_hour          INTEGER,
        limit_per_day           INTEGER,
        limit_behavior          TEXT NOT NULL DEFAULT 'defer',
        active                  INTEGER NOT NULL DEFAULT 1,   -- the operator's switch
        dispatching             INTEGER NOT NULL DEFAULT 1,   -- the tenant's own switch
        created_at              INTEGER NOT NULL,
        updated_at              INTEGER NOT NULL,
        deleted_at              INTEGER  -- purged while dispatchers still held some of its rows
    );
    INSERT INTO tenants (id, name, created_at, updated_at)
        VALUES ('default', 'default', CAST(strftime('%s', 'now') AS INTEGER),
                CAST(strftime('%s', 'now') AS INTEGER));

    CREATE TABLE new_accounts (
        tenant_id        TEXT NOT NULL REFERENCES tenants(id),
        id               TEXT NOT NULL,
        host             TEXT NOT NULL,
        port             INTEGER NOT NULL,
        user             TEXT,
        password         TEXT,
        use_tls          INTEGER,
        starttls         INTEGER NOT NULL DEFAULT 0,
        ttl              INTEGER NOT NULL DEFAULT 300,
        timeout          REAL NOT NULL DEFAULT 30,
        limit_per_second INTEGER,
        limit_per_minute INTEGER,
        limit_per_hour   INTEGER,
        limit_per_day    INTEGER,
        limit_behavior   TEXT NOT NULL DEFAULT 'defer',
        batch_size       INTEGER,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        deleted_at       INTEGER,
        max_recipients_per_transaction INTEGER NOT NULL DEFAULT 100,
        PRIMARY KEY (tenant_id, id)
    );
    INSERT INTO new_accounts
        SELECT 'default', id, host, port, user, password, use_tls, starttls, ttl, timeout,
               limit_per_second, limit_per_minute, limit_per_hour, limit_per_day,
               limit_behavior, batch_size, created_at, updated_at, deleted_at,
               max_recipients_per_transaction
        FROM accounts;

    CREATE TABLE new_messages (
        tenant_id          TEXT NOT NULL REFERENCES tenants(id),
        id                 TEXT NOT NULL,
        account_id         TEXT,             -- NULL: the [smtp] default account
        priority           INTEGER NOT NULL DEFAULT 2,
        payload            TEXT NOT NULL,
        created_at         INTEGER NOT NULL,
        updated_at         INTEGER NOT NULL,
        deferred_ts        INTEGER,
        sent_ts            INTEGER,
        error_ts           INTEGER,
        error              TEXT,
        reported_ts        INTEGER,
        ready_at           REAL NOT NULL,
        enqueued_at        REAL NOT NULL,
        lease_owner        TEXT,
        lease_expires      REAL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        smtp_code          INTEGER,
        refused            TEXT,
        possible_duplicate INTEGER NOT NULL DEFAULT 0,
        outcome_at         REAL,
        maybe_sent         INTEGER NOT NULL DEFAULT 0,
        message_id_header  TEXT,
        verp_token         TEXT,
        rcpt_done          TEXT,
        PRIMARY KEY (tenant_id, id),
        FOREIGN KEY (tenant_id, account_id) REFERENCES accounts(tenant_id, id)
    );
    INSERT INTO new_messages (rowid, tenant_id, id, account_id, priority, payload, created_at,
            updated_at, deferred_ts, sent_ts, error_ts, error, reported_ts, ready_at,
            enqueued_at, lease_owner, lease_expires, attempts, smtp_code, refused,
            possible_duplicate, outcome_at, maybe_sent, message_id_header, verp_token,
            rcpt_done)
        SELECT rowid, 'default', id, account_id, priority, payload, created_at, updated_at,
               deferred_ts, sent_ts, error_ts, error, reported_ts, ready_at, enqueued_at,
               lease_owner, lease_expires, attempts, smtp_code, refused, possible_duplicate,
               outcome_at, maybe_sent, message_id_header, verp_token, rcpt_done
        FROM messages;

    CREATE TABLE new_attempts (
        id          INTEGER PRIMARY KEY,
        tenant_id   TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        account_id  TEXT,
        ts          REAL NOT NULL,
        outcome     TEXT NOT NULL,
        smtp_code   INTEGER,
        detail      TEXT,
        duration    REAL,
        process     TEXT,
        FOREIGN KEY (tenant_id, message_id) REFERENCES messages(tenant_id, id) ON DELETE CASCADE
    );
    INSERT INTO new_attempts
        SELECT id, 'default', message_id, account_id, ts, outcome, smtp_code, detail, duration,
               process
        FROM attempts;

    CREATE TABLE new_bounces (
        id          INTEGER PRIMARY KEY,
        tenant_id   TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        recipient   TEXT NOT NULL,
        kind        TEXT NOT NULL,
        action      TEXT NOT NULL,
        status      TEXT,
        diagnostic  TEXT,
        bounced_ts  REAL NOT NULL,
        mail_key    TEXT NOT NULL,
        reported_ts INTEGER,
        FOREIGN KEY (tenant_id, message_id) REFERENCES messages(tenant_id, id) ON DELETE CASCADE
    );
    INSERT INTO new_bounces
        SELECT id, 'default', message_id, recipient, kind, action, status, diagnostic,
               bounced_ts, mail_key, reported_ts
        FROM bounces;

    CREATE TABLE new_circuits (
        tenant_id   TEXT NOT NULL,
        account     TEXT NOT NULL,      -- accounts.id, or '' for the [smtp] default account
        open_until  REAL NOT NULL,
        failures    INTEGER NOT NULL,
        since       REAL NOT NULL,
        opened_at   REAL NOT NULL,
        reason      TEXT,
        PRIMARY KEY (tenant_id, account)
    );
    INSERT INTO new_circuits
        SELECT 'default', account, open_until, failures, since, opened_at, reason FROM circuits;

    CREATE TABLE new_suppressions (
        tenant_id   TEXT NOT NULL,
        address     TEXT NOT NULL,      -- lower-cased
        reason      TEXT NOT NULL,
        status      TEXT,
        diagnostic  TEXT,
        first_seen  INTEGER NOT NULL,
        last_seen   INTEGER NOT NULL,
        count       INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (tenant_id, address)
    ) WITHOUT ROWID;
    INSERT INTO new_suppressions
        SELECT 'default', address, reason, status, diagnostic, first_seen, last_seen, count
        FROM suppressions;

    DROP TABLE bounces;
    DROP TABLE attempts;
    DROP TABLE messages;
    DROP TABLE accounts;
    DROP TABLE circuits;
    DROP TABLE suppressions;
    ALTER TABLE new_accounts RENAME TO accounts;
    ALTER TABLE new_messages RENAME TO messages;
    ALTER TABLE new_attempts RENAME TO attempts;
    ALTER TABLE new_bounces RENAME TO bounces;
    ALTER TABLE new_circuits RENAME TO circuits;
    ALTER TABLE new_suppressions RENAME TO suppressions;

    -- claiming: per tenant, account and priority, the oldest ready rows
    CREATE INDEX messages_claim ON messages(tenant_id, account_id, priority, ready_at)
        WHERE sent_ts IS NULL AND error_ts IS NULL;
    -- reporting: per tenant, terminal outcomes not yet reported, oldest first
    CREATE INDEX messages_unreported ON messages(tenant_id, outcome_at)
        WHERE reported_ts IS NULL AND outcome_at IS NOT NULL;
    CREATE INDEX messages_reported ON messages(reported_ts) WHERE reported_ts IS NOT NULL;
    CREATE INDEX messages_message_id_header ON messages(message_id_header);
    CREATE UNIQUE INDEX messages_verp_token ON messages(verp_token) WHERE verp_token IS NOT NULL;
    CREATE INDEX attempts_message ON attempts(tenant_id, message_id, id);
    CREATE INDEX attempts_account_ts ON attempts(tenant_id, account_id, ts);
    -- a tenant-wide rate limit rebuilds its ledger from every account's sends
    CREATE INDEX attempts_tenant_ts ON attempts(tenant_id, ts);
    CREATE INDEX bounces_message ON bounces(tenant_id, message_id);
    CREATE INDEX bounces_ts ON bounces(bounced_ts);
    CREATE INDEX bounces_unreported ON bounces(tenant_id, id)
        WHERE reported_ts IS NULL AND action = 'failed';
    """,
]
