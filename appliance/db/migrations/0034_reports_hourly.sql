-- Reserved for a branch in progress; replaced by its migration.
SELECT 1;
