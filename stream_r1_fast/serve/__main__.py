from stream_r1_fast.serve.cli import main

raise SystemExit(main())
