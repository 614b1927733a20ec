"""``python -m relaycast`` = the ``relaycast`` command."""

from relaycast.cli import main

raise SystemExit(main())
