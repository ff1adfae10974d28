-- events keeps its primary key (position); see migrations/postgres/0023. A single
-- write's consistency token comes from the write's own last event, not from the
-- citizen's latest one.
DROP INDEX IF EXISTS events_by_citizen;
