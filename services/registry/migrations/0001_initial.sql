-- The registry: media records and their signals (hashes), series, victims, and sealed case data.
-- Sized for tens of millions of media per node: bigint identity keys, narrow join tables, and
-- indexes chosen for the hot paths (exact lookup by hash, media by row, series membership).
-- Enumerations are smallints holding the contract's numbers (services/registry/model.py).

CREATE TABLE media (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Node id of the agency that created the record; only it ever changes the record.
    origin          text        NOT NULL CHECK (char_length(origin) BETWEEN 1 AND 128),
    media_id        text        NOT NULL CHECK (char_length(media_id) BETWEEN 1 AND 128),
    media_type      smallint    NOT NULL CHECK (media_type IN (1, 2)),
    category_scheme smallint    CHECK (category_scheme BETWEEN 1 AND 3),
    category_code   text        CHECK (char_length(category_code) BETWEEN 1 AND 16),
    -- Bits: 1 victim identified, 2 offender identified, 4 distributed, 8 self-generated.
    flags           smallint    NOT NULL DEFAULT 0 CHECK (flags BETWEEN 0 AND 15),
    first_seen      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Set when the origin withdraws the media: it stops matching but is kept for the change log.
    retracted_at    timestamptz,
    CONSTRAINT media_origin_media_id_key UNIQUE (origin, media_id),
    CONSTRAINT media_category_complete CHECK ((category_scheme IS NULL) = (category_code IS NULL))
);

-- Retracted media are few; this keeps counting them cheap.
CREATE INDEX media_retracted_idx ON media (id) WHERE retracted_at IS NOT NULL;

CREATE TABLE signals (
    media_row bigint   NOT NULL REFERENCES media (id),
    algorithm smallint NOT NULL CHECK (algorithm BETWEEN 1 AND 5),
    value     bytea    NOT NULL,
    -- PDQ only; NULL means unknown (usable for matching).
    quality   smallint CHECK (quality BETWEEN 0 AND 100),
    -- Leading (algorithm, value) makes this the exact-lookup index (index-only: it carries
    -- media_row) and the uniqueness that makes a media's signals a set.
    CONSTRAINT signals_pkey PRIMARY KEY (algorithm, value, media_row),
    CONSTRAINT signals_value_length CHECK (
        octet_length(value) = CASE algorithm
            WHEN 1 THEN 16 WHEN 2 THEN 20 WHEN 3 THEN 32 WHEN 4 THEN 32 WHEN 5 THEN 144 END
    ),
    CONSTRAINT signals_quality_pdq_only CHECK (quality IS NULL OR algorithm = 4)
);

-- All signals of a media (lookup answers carry them).
CREATE INDEX signals_media_row_idx ON signals (media_row);

CREATE TABLE series (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin     text        NOT NULL CHECK (char_length(origin) BETWEEN 1 AND 128),
    series_id  text        NOT NULL CHECK (char_length(series_id) BETWEEN 1 AND 128),
    name       text        NOT NULL DEFAULT '' CHECK (char_length(name) <= 200),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT series_origin_series_id_key UNIQUE (origin, series_id)
);

CREATE TABLE media_series (
    media_row  bigint NOT NULL REFERENCES media (id),
    series_row bigint NOT NULL REFERENCES series (id),
    CONSTRAINT media_series_pkey PRIMARY KEY (media_row, series_row)
);

-- Media of a series (counting them, linking series across origins).
CREATE INDEX media_series_series_row_idx ON media_series (series_row, media_row);

CREATE TABLE victims (
    series_row       bigint      NOT NULL REFERENCES series (id),
    -- Pseudonymous id inside the series; no victim identity is ever stored.
    victim_id        text        NOT NULL CHECK (char_length(victim_id) BETWEEN 1 AND 128),
    status           smallint    NOT NULL CHECK (status BETWEEN 1 AND 4),
    -- A role contact (e.g. "GB-NCA victim-ID desk"), never a person's private data.
    responsible_desk text        NOT NULL DEFAULT '' CHECK (char_length(responsible_desk) <= 200),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT victims_pkey PRIMARY KEY (series_row, victim_id)
);

-- Local-only case data, sealed (XSalsa20-Poly1305) with the node's case key. `digest` is a keyed
-- BLAKE2b of the plaintext, so equal case data is stored once per media without being
-- guessable from the digest.
CREATE TABLE case_records (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    media_row  bigint      NOT NULL REFERENCES media (id),
    digest     bytea       NOT NULL CHECK (octet_length(digest) = 32),
    sealed     bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT case_records_media_digest_key UNIQUE (media_row, digest)
);
