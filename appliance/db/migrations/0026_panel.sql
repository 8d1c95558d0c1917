-- The web panel's per-user preferences (issue 15). One row per user who changed one;
-- a missing row (or a NULL column) means "the default": the language from the
-- browser's Accept-Language, the appliance's timezone, the theme of the system.
CREATE TABLE user_preferences (
    user_id    INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    language   TEXT CHECK (language IS NULL OR language IN ('en', 'tr')),
    timezone   TEXT CHECK (timezone IS NULL OR length(timezone) BETWEEN 1 AND 64),
    theme      TEXT    NOT NULL DEFAULT 'system' CHECK (theme IN ('system', 'light', 'dark')),
    updated_at REAL    NOT NULL
) STRICT;
