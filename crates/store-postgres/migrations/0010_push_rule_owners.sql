-- Users with rules of their own: a membership event notifies nobody under
-- the default rules, so only these (few) are evaluated for one, whatever
-- the room's size.
CREATE INDEX account_data_push_rules ON account_data (user_id) WHERE event_type = 'm.push_rules' AND room_id = '';
