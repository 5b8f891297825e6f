-- Which unit of this node submitted each of its media (local only: never in a change-log entry,
-- never federated). A submitter may change only what its own unit submitted; media without a
-- row (submitted before units had roles) are changed by supervisors and the node's operator.
-- `submitted_by` is `unit:<name>`, or `operator:<name>` for the node's own operator.
CREATE TABLE media_submitters (
    media_row    bigint PRIMARY KEY REFERENCES media (id) ON DELETE CASCADE,
    submitted_by text   NOT NULL CHECK (char_length(submitted_by) BETWEEN 1 AND 200)
);
