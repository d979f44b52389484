"""Schedules: recipes rebuilt on a clock, only when their inputs changed
(clock: JetStream's message scheduler; store: records, runs, recipes in
NATS; core: the API's verbs; runner: what a tick does; outcomes: what a
scheduled build's end does to its schedule)."""
