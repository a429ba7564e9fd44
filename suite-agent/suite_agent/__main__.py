from suite_agent.cli import main

raise SystemExit(main())
