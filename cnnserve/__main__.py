from cnnserve.cli import main

raise SystemExit(main())
