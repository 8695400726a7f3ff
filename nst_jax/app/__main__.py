import sys

from nst_jax.app.main import main

sys.exit(main())
