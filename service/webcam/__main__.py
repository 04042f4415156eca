import sys

from service.webcam.demo import main

sys.exit(main())  # @command treats it as this process's command: stop signals end it as Ctrl-C does
