-- Contacts: who a conversation's user is (name, username, profile picture), a cache of
-- what Meta says about the person now (issue 26). Written by the crawler: from the
-- participants of the conversations it lists (source 'participants') and from the User
-- Profile API for users it has no name of (source 'profile_api';
-- producers/crawler/profiles.py). Not a projection of the log: Meta's view of a profile
-- changes and is fetched again when it is older than CONVSYNC_CONTACT_MAX_AGE, so a
-- replay does not rebuild it, the fetcher does (docs/architecture.md, decision 15).
CREATE TABLE IF NOT EXISTS contacts (
    page_id      text        NOT NULL,
    -- the conversation's user (conversations.psid): a PSID, or an Instagram-scoped id
    psid         text        NOT NULL,
    platform     text        NOT NULL DEFAULT 'messenger'
                             CHECK (platform IN ('messenger', 'instagram')),
    name         text,
    first_name   text,
    last_name    text,
    username     text,
    profile_pic  text,
    source       text        NOT NULL CHECK (source IN ('participants', 'profile_api')),
    -- when the fields above were last read from Meta (NULL: never, only errors so far)
    fetched_at   timestamptz,
    -- the last refusal of the User Profile API for this user (NULL after a success);
    -- attempts counts the refusals in a row, capped by CONVSYNC_CONTACT_MAX_ATTEMPTS
    error        text,
    error_at     timestamptz,
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    PRIMARY KEY (page_id, psid)
);

-- The profile fetcher's look for stale contacts, oldest first.
CREATE INDEX IF NOT EXISTS contacts_fetched_idx ON contacts (page_id, fetched_at);
