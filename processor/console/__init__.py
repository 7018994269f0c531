"""`flowhook console`: the web console over a local SQLite index of the results and flows topics.

Modules: `index` (the SQLite index, writing) and `queries` (reading), `feed` (the consumer
that keeps it current), `auth` (pure access rules, TOTP, sign-in limits), `users` (the
shared users file: users, sessions, failed sign-ins), `sessions` (cookie and CSRF
middleware), `audit` (the audit topic), `profiles` (profile lookups on the processors),
`pages_*` (handlers), `context` and `app` (wiring), `commands` (CLI), `bench`.
"""
