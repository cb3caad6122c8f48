"""The SQL: the schema's versions and the statements the store runs."""

from __future__ import annotations

from collections.abc import Sequence

from apitokens._model import (
    Action,
    Outcome,
)

# -- the schema ---------------------------------------------------------------------------

_V1 = (
    """
    CREATE TABLE apitokens_tokens (
        id                    text PRIMARY KEY,
        name                  text NOT NULL,
        name_folded           text NOT NULL,
        "user"                text,
        created_by            text NOT NULL,
        created_at            timestamptz NOT NULL,
        expires_at            timestamptz,
        scope                 text NOT NULL,
        restrictions          text[] NOT NULL DEFAULT '{}',
        allowed_ips           text[] NOT NULL DEFAULT '{}',
        secure                boolean NOT NULL DEFAULT true,
        secret_hash           text NOT NULL,
        previous_hash         text,
        previous_valid_until  timestamptz,
        revealable            text,
        last_used_at          timestamptz,
        last_used_ip          text,
        use_count             bigint NOT NULL DEFAULT 0,
        revoked_at            timestamptz
    ) WITH (fillfactor = 70)
    """,
    # Every audit batch updates the usage columns of the tokens it saw. No index holds
    # them, and pages keep room (fillfactor), so those are HOT updates: the row version
    # stays on its page and no index is touched. With 1,000 tokens in each batch that
    # is 26k -> 45k events/s. So no index on last_used_at: a stale-token search
    # (created_at <= cut-off, and not used since) ranges over apitokens_tokens_by_created.
    # list(): by owner, by status, and its order (created_at DESC, id).
    'CREATE INDEX apitokens_tokens_by_user ON apitokens_tokens ("user", created_at DESC, id)',
    "CREATE INDEX apitokens_tokens_by_status ON apitokens_tokens (revoked_at, expires_at)",
    "CREATE INDEX apitokens_tokens_by_created ON apitokens_tokens (created_at DESC, id)",
    # seq keeps insertion order among equal times; every index ends with it so that
    # events() reads its order (at DESC, seq DESC) straight off the index.
    """
    CREATE TABLE apitokens_audit (
        seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at         timestamptz NOT NULL,
        action     text NOT NULL,
        outcome    text NOT NULL,
        token_id   text,
        "user"     text,
        actor      text,
        client_ip  text,
        method     text,
        path       text,
        reason     text NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX apitokens_audit_by_token ON apitokens_audit (token_id, at, seq)",
    'CREATE INDEX apitokens_audit_by_user ON apitokens_audit ("user", at, seq)',
    # Nearly every row is a success: only the other outcomes are worth an index entry
    # (a search for successes walks apitokens_audit_by_at, where nearly all match).
    "CREATE INDEX apitokens_audit_by_outcome ON apitokens_audit (outcome, at, seq)"
    " WHERE outcome <> 'success'",
    "CREATE INDEX apitokens_audit_by_at ON apitokens_audit (at, seq)",
)

_V2 = (
    # The failure ledger (FailureLedger): failed attempts per throttle key per second of
    # the wall clock, shared by every process on the database. The primary key serves
    # failures_since and the upsert; the index on second serves the pruning.
    """
    CREATE TABLE apitokens_failures (
        key     text NOT NULL,
        second  bigint NOT NULL,
        count   bigint NOT NULL,
        PRIMARY KEY (key, second)
    )
    """,
    "CREATE INDEX apitokens_failures_by_second ON apitokens_failures (second)",
)

_V3 = (
    # Every change to a token, by apitokens or by hand in SQL (an incident, a DBA's
    # UPDATE or DELETE), tells every listening process (LISTEN/NOTIFY, the change
    # feed) when it commits: a trigger, not the store's statements. Only the columns
    # a cached record depends on: the audit batches' usage updates notify no one.
    # The channel is the feed's (_feed._channel): the tables' schema, hashed if long.
    """
    CREATE FUNCTION apitokens_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        channel text := 'apitokens_changes:' || TG_TABLE_SCHEMA;
        payload text := '';
    BEGIN
        IF octet_length(channel) >= 64 THEN
            channel := 'apitokens_changes:'
                || left(encode(sha256(convert_to(TG_TABLE_SCHEMA, 'UTF8')), 'hex'), 40);
        END IF;
        IF TG_LEVEL = 'ROW' AND octet_length(OLD.id) < 8000 THEN
            payload := OLD.id;  -- else '': anything may have changed
        END IF;
        PERFORM pg_notify(channel, payload);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER apitokens_tokens_changed
    AFTER UPDATE OF id, name, "user", created_by, created_at, expires_at, scope,
        restrictions, allowed_ips, secure, secret_hash, previous_hash,
        previous_valid_until, revealable, revoked_at
        OR DELETE ON apitokens_tokens
    FOR EACH ROW EXECUTE FUNCTION apitokens_notify_change()
    """,
    """
    CREATE TRIGGER apitokens_tokens_truncated AFTER TRUNCATE ON apitokens_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION apitokens_notify_change()
    """,
    # The audit batches written, by id, in the batch's own transaction: a batch whose
    # COMMIT reached the server but whose answer was lost is sent again with the same
    # id, and is then found here and not written twice. Kept a day (by `at`).
    """
    CREATE TABLE apitokens_batches (
        id  uuid PRIMARY KEY,
        at  timestamptz NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX apitokens_batches_by_at ON apitokens_batches (at)",
)

_V4 = (
    # Reuse detection (DESIGN §11): the hashes of the secrets rotated out before the
    # previous one, newest first. A rotation always changes secret_hash too, so the
    # change trigger need not watch this column.
    "ALTER TABLE apitokens_tokens ADD COLUMN retired_hashes text[] NOT NULL DEFAULT '{}'",
)

_V5 = (
    # The expiry notices claimed (NoticeLedger): one row per token, expiry and
    # threshold (in µs), inserted by the one caller that sends the notice. The primary
    # key makes the claim atomic; the index on expires_at serves the pruning.
    """
    CREATE TABLE apitokens_notices (
        token_id    text NOT NULL,
        expires_at  timestamptz NOT NULL,
        threshold   bigint NOT NULL,
        claimed_at  timestamptz NOT NULL,
        PRIMARY KEY (token_id, expires_at, threshold)
    )
    """,
    "CREATE INDEX apitokens_notices_by_expiry ON apitokens_notices (expires_at)",
)

_V6 = (
    # Per-token rate limits and credits (DESIGN §11): their canonical text ("100/min",
    # "1000/day") and the credits, NULL for none; existing tokens get none. No index:
    # the audit batches' usage updates stay HOT.
    "ALTER TABLE apitokens_tokens ADD COLUMN rate_limit text",
    "ALTER TABLE apitokens_tokens ADD COLUMN credits bigint",
    "ALTER TABLE apitokens_tokens ADD COLUMN refill text",
    # A limit changed by hand in SQL reaches every process too: the change trigger
    # watches the new columns (still not retired_hashes, nor the usage columns).
    "DROP TRIGGER apitokens_tokens_changed ON apitokens_tokens",
    """
    CREATE TRIGGER apitokens_tokens_changed
    AFTER UPDATE OF id, name, "user", created_by, created_at, expires_at, scope,
        restrictions, allowed_ips, secure, secret_hash, previous_hash,
        previous_valid_until, revealable, revoked_at, rate_limit, credits, refill
        OR DELETE ON apitokens_tokens
    FOR EACH ROW EXECUTE FUNCTION apitokens_notify_change()
    """,
    # The usage ledger (UsageLedger): requests per token per window (its length and its
    # start, in Unix seconds), added to by every process. The primary key serves the
    # upsert; the index on the window's end, the pruning.
    """
    CREATE TABLE apitokens_requests (
        token_id  text NOT NULL,
        seconds   bigint NOT NULL,
        start     bigint NOT NULL,
        count     bigint NOT NULL,
        PRIMARY KEY (token_id, seconds, start)
    )
    """,
    "CREATE INDEX apitokens_requests_by_end ON apitokens_requests ((start + seconds))",
    # And each credited token's balance: the credits left, as of a refill period (whole
    # refill periods since the epoch; 0 without refill).
    """
    CREATE TABLE apitokens_credits (
        token_id      text PRIMARY KEY,
        credits_left  bigint NOT NULL,
        period        bigint NOT NULL
    )
    """,
)

MIGRATIONS: tuple[Sequence[str], ...] = (_V1, _V2, _V3, _V4, _V5, _V6)
"""``MIGRATIONS[n]`` upgrades a database from schema version ``n`` to ``n + 1``.

A released migration is never edited: changes are new entries appended.
"""

LATEST_VERSION = len(MIGRATIONS)

_ADD_FAILURES = (
    "INSERT INTO apitokens_failures (key, second, count)"
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[])"
    " ON CONFLICT (key, second) DO UPDATE"
    " SET count = apitokens_failures.count + excluded.count"
)
# What left the window goes, by the older of two cut-offs: the caller's (its clock and
# window) and the database server's clock (a host whose clock runs ahead must not
# erase what the others still count). Both keep at least FAILURES_KEPT_AT_LEAST.
_PRUNE_FAILURES = (
    "DELETE FROM apitokens_failures WHERE second < least(%s::bigint,"
    " floor(extract(epoch FROM statement_timestamp()))::bigint - %s::bigint)"
)
_CLAIM_BATCH = "INSERT INTO apitokens_batches (id) VALUES (%s) ON CONFLICT (id) DO NOTHING"
_PRUNE_BATCHES = "DELETE FROM apitokens_batches WHERE at < now() - interval '1 day'"
_COUNT_FAILURES = (
    "SELECT coalesce(sum(count), 0) FROM apitokens_failures WHERE key = %s AND second >= %s"
)

_CLAIM_NOTICE = (
    "INSERT INTO apitokens_notices (token_id, expires_at, threshold, claimed_at)"
    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
# Claims of expiries long past go, by the older of the caller's clock and the server's
# (a host whose clock runs ahead must not erase a claim another host still needs).
_PRUNE_NOTICES = (
    "DELETE FROM apitokens_notices WHERE expires_at < least(%s::timestamptz,"
    " statement_timestamp()) - %s::interval"
)
_RELEASE_NOTICE = (
    "DELETE FROM apitokens_notices WHERE token_id = %s AND expires_at = %s AND threshold = %s"
)

# The usage ledger. Windows that ended go first, by the older of two cut-offs: the
# caller's and the server's clock less REQUESTS_KEPT_AFTER_END (a host whose clock runs
# ahead must not erase the windows the others still count in). Pruning before the
# upsert, in the same transaction, takes every row lock in index order first, so two
# callers queue rather than deadlock.
_PRUNE_REQUESTS = (
    "DELETE FROM apitokens_requests WHERE start + seconds < least(%s::bigint,"
    " floor(extract(epoch FROM statement_timestamp()))::bigint - %s::bigint)"
)
# Adds and reads back in one statement; the rows come in key order (request_rows), so
# two callers adding to the same windows lock them in the same order.
_ADD_REQUESTS = (
    "INSERT INTO apitokens_requests AS r (token_id, seconds, start, count)"
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[])"
    " ON CONFLICT (token_id, seconds, start) DO UPDATE SET count = r.count + excluded.count"
    " RETURNING token_id, seconds, start, count"
)
# storage._limits.settle in SQL, in one statement: a new balance starts at credits less
# the spend; an existing one gets refill per period since its own (the periods counted
# at most `credits` times: beyond that the cap is reached anyway, and the product stays
# within bigint), never above credits unless it already was, then the spend comes off,
# never below 0. A balance's period never goes back (a caller whose clock runs behind).
_SPEND_CREDITS = (
    "WITH s (id, spent, credits, refill, period) AS ("
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]))"
    " INSERT INTO apitokens_credits AS c (token_id, credits_left, period)"
    " SELECT id, greatest(0, credits - spent), period FROM s ORDER BY id"
    " ON CONFLICT (token_id) DO UPDATE SET"
    " credits_left = (SELECT greatest(0, CASE WHEN s.period > c.period AND s.refill > 0"
    " THEN greatest(c.credits_left, least(s.credits,"
    " c.credits_left + s.refill * least(s.period - c.period, s.credits)))"
    " ELSE c.credits_left END - s.spent) FROM s WHERE s.id = c.token_id),"
    " period = greatest(c.period, excluded.period)"
    " RETURNING token_id, credits_left"
)
_RESET_CREDITS = "DELETE FROM apitokens_credits WHERE token_id = %s"
_SET_CREDITS = (
    "INSERT INTO apitokens_credits (token_id, credits_left, period) VALUES (%s, %s, %s)"
    " ON CONFLICT (token_id) DO UPDATE"
    " SET credits_left = EXCLUDED.credits_left, period = EXCLUDED.period"
)

_SCHEMA_TABLE = """
    CREATE TABLE IF NOT EXISTS apitokens_schema (
        version     integer PRIMARY KEY,
        applied_at  timestamptz NOT NULL DEFAULT now()
    )
"""
# pg_advisory_lock's key: "apitoken" in ASCII, as a bigint.
_MIGRATION_LOCK = int.from_bytes(b"apitoken", "big")

# -- the statements -----------------------------------------------------------------------

_RECORD_COLUMNS = (
    'id, name, "user", created_by, created_at, expires_at, scope, restrictions, allowed_ips,'
    " secure, last_used_at, last_used_ip, use_count, revoked_at, rate_limit, credits, refill"
)
_STORED_COLUMNS = (
    _RECORD_COLUMNS
    + ", secret_hash, previous_hash, previous_valid_until, revealable, retired_hashes"
)
_EVENT_COLUMNS = 'at, action, outcome, token_id, "user", actor, client_ip, method, path, reason'

_INSERT_RECORD = (
    f"INSERT INTO apitokens_tokens ({_STORED_COLUMNS}, name_folded)"  # noqa: S608
    f" VALUES ({', '.join(['%s'] * 23)}) ON CONFLICT (id) DO NOTHING"
)
_UPDATE_RECORD = (
    "UPDATE apitokens_tokens SET name = %s, name_folded = %s, expires_at = %s, scope = %s,"
    " restrictions = %s, allowed_ips = %s, secure = %s, secret_hash = %s, previous_hash = %s,"
    " previous_valid_until = %s, revealable = %s, retired_hashes = %s, rate_limit = %s,"
    " credits = %s, refill = %s WHERE id = %s"
)
# Each change to a token tells every listening process through the trigger of schema
# version 3 (apitokens_notify_change), in the same transaction: the notice goes out
# when the change commits, and never for a change rolled back.
_REPLACE_HASH = "UPDATE apitokens_tokens SET secret_hash = %s WHERE id = %s AND secret_hash = %s"
# One statement: whether the token exists, and whether this call revoked it. A
# concurrent revoke waits on the row lock and then sees revoked_at set.
_REVOKE = (
    "WITH revoked AS (UPDATE apitokens_tokens SET revoked_at = %s"
    " WHERE id = %s AND revoked_at IS NULL RETURNING 1)"
    " SELECT EXISTS (SELECT 1 FROM revoked),"
    " EXISTS (SELECT 1 FROM apitokens_tokens WHERE id = %s)"
)
# A batch's uses, folded per token, in one statement. The rows are locked first, in id
# order: two batches that share tokens then lock them in the same order and never
# deadlock (an UPDATE ... FROM locks rows in whatever order its join produces them).
_LOCK_USED = "SELECT 1 FROM apitokens_tokens WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
# SET expressions all see the row as it was, so the order of the two CASEs is irrelevant.
# The ids are unique (folded), so each row is updated once.
_FOLD_USAGE = (
    "UPDATE apitokens_tokens AS t SET use_count = t.use_count + u.count,"
    " last_used_ip = CASE WHEN t.last_used_at IS NULL OR t.last_used_at <= u.at"
    " THEN u.ip ELSE t.last_used_ip END,"
    " last_used_at = CASE WHEN t.last_used_at IS NULL OR t.last_used_at <= u.at"
    " THEN u.at ELSE t.last_used_at END"
    " FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[], %s::text[])"
    " AS u(id, count, at, ip) WHERE t.id = u.id"
)
# Binary: each value goes as PostgreSQL stores it, not formatted (timestamps) and
# escaped (strings) as text first: the writer's CPU per audit row 1.8 -> 0.45 µs
# (benchmarks/findings.md, issue 15). A NUL in a string is still refused by the server.
_COPY_EVENTS = f"COPY apitokens_audit ({_EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_EVENT_TYPES = ("timestamptz", *["text"] * 9)  # the types of _EVENT_COLUMNS, in order

_ACTION_TEXT: dict[Action, str] = {action: action.value for action in Action}
_OUTCOME_TEXT: dict[Outcome, str] = {outcome: outcome.value for outcome in Outcome}
_AUTHENTICATE = Action.AUTHENTICATE.value
