"""`python -m ovq ...` is the `ovq` command."""

from ovq.agent.cli.main import main

raise SystemExit(main())
