"""The players' management nodes and what they stand on.

- `pki`: the lab CA, player credentials, and the identity in a peer certificate.
- `server`: `Service` (routes, XML errors, authorization helpers) and
  `ServiceServer` (HTTPS with client certificates required).
- `client`: `PlayerClient`, calling another player with bounded waits.
- `db`: `Store`, a SQLAlchemy Core store on SQLite or PostgreSQL.

Import the submodules directly; this package imports nothing, so using one
part does not pull in the others' dependencies.
"""
