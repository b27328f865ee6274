from llavakit.cli import main

raise SystemExit(main())
