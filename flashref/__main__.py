from flashref.cli import main

raise SystemExit(main())
