-- The broker's id of the message a dead letter came from: a message recorded again (the writer
-- died between recording it and acking it, and the broker redelivered it) keeps one letter.
ALTER TABLE writer_dead_letters ADD COLUMN message_id text;
CREATE UNIQUE INDEX writer_dead_letters_message_id_key ON writer_dead_letters (message_id);
