-- Who made an outbound message: the HTTP API ('api'), the account's phone or another
-- linked device ('phone'), or an automation of ours ('automation'). NULL for inbound.
-- Sends made before this column existed all came through the API.
ALTER TABLE messages ADD COLUMN origin TEXT
    CHECK (origin IS NULL OR origin IN ('api', 'phone', 'automation'));
UPDATE messages SET origin = 'api' WHERE direction = 'out';
