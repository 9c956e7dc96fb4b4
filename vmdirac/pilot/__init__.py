"""The pilot: what runs inside every VM (or by hand on any machine) and computes jobs.

``JobAgent`` (``job_agent.py``) offers the machine's free slots to the Matcher and runs each job
it gets in a ``JobWrapper`` (``job_wrapper.py``), which runs the payload under a ``Watchdog``
(``watchdog.py``). ``dirac-pilot`` (``vmdirac/cli/pilot.py``) starts one from its options
(``config.py``); ``resources.py`` describes the machine.
"""
