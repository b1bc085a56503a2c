"""python -m luki_gateway == luki-gateway."""

from .cli import main

raise SystemExit(main())
