import sys

from gesture_core.interrupts import end_quietly_on_interrupt, terminate_as_interrupt
from service.webcam.demo import main

# What @command does for a command run as __main__ (main's module here is service.webcam.demo): SIGTERM and
# SIGHUP end the run as Ctrl-C does (the video finished, the summary said), and once main has returned a
# second signal ends the process quietly, not with a traceback from torch's exit handlers.
terminate_as_interrupt()
code = main()
end_quietly_on_interrupt(code)
sys.exit(code)
