-- change_log.media_before now also holds, for a media state entry, the media as it stood before
-- that change (NULL for a media created by it): when the new state may not leave for a peer but
-- the earlier one did, the sender withdraws the record from that peer with a retraction.
COMMENT ON COLUMN change_log.media_before IS
    'Retractions: the media as it stood when retracted. Media states: the media before the change (NULL when created). Never sent to peers.';
