-- unicell additions for the Placement API (unicell::store::placement): the consumer type of
-- Placement 1.38, and the custom resource classes and traits Placement keeps in its
-- resource_classes and traits tables (kind 'class' or 'trait'; standard names are not stored).
ALTER TABLE consumers ADD COLUMN IF NOT EXISTS consumer_type VARCHAR(255) NULL;
CREATE TABLE IF NOT EXISTS placement_custom_names (
    kind VARCHAR(16) NOT NULL,
    name VARCHAR(255) NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);
