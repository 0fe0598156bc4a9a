-- What version 2 added to version 1 (the audit chain's link kind and anchors).
-- version 2: the link kind of each audit event, and each run's anchor of the chain (audit.py, anchors.py).
-- Only when missing: ALTER TABLE locks the table exclusively, and appends hold a share lock on it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'sensei.audit_events'::regclass
                   AND attname = 'hash_kind' AND NOT attisdropped) THEN
        ALTER TABLE sensei.audit_events ADD COLUMN hash_kind text NOT NULL DEFAULT 'sha256';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'sensei.rollback_runs'::regclass
                   AND attname = 'audit_head_hash' AND NOT attisdropped) THEN
        ALTER TABLE sensei.rollback_runs
            ADD COLUMN IF NOT EXISTS audit_events bigint,
            ADD COLUMN IF NOT EXISTS audit_head_seq bigint,
            ADD COLUMN IF NOT EXISTS audit_head_hash text;
    END IF;
END $$;
