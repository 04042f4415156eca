import sys

from service.webcam.demo import main

sys.exit(main())
