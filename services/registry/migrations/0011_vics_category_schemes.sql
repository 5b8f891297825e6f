-- The VICS category schemes (issue 11): a Project VIC category number is kept with the profile it
-- was given under (contract CategoryScheme 4-7). NOT VALID then VALIDATE: the check of existing
-- rows does not block writes while it runs.

ALTER TABLE media DROP CONSTRAINT media_category_scheme_check;
ALTER TABLE media ADD CONSTRAINT media_category_scheme_check
    CHECK (category_scheme BETWEEN 1 AND 7) NOT VALID;
ALTER TABLE media VALIDATE CONSTRAINT media_category_scheme_check;
