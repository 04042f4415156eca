import sys

from gesture_core.interrupts import terminate_as_interrupt
from service.webcam.demo import main

# SIGTERM and SIGHUP end the run as Ctrl-C does (the video finished, the summary said): @command does this
# for a module run as __main__, and main's module here is service.webcam.demo
terminate_as_interrupt()
sys.exit(main())
