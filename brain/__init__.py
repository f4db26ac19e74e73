"""The brain: the single authority for queue truth (pure core, journal, service).

Its modules form layers; each imports only modules below it, never one
above or beside it in a circle (``tests/test_brain_layers.py`` checks this;
``python -m tests.test_brain_layers`` prints the graph). Bottom to top:

* ``state``, ``commands``, ``events``, ``config``: the data;
* ``ctx``: one step's context; ``summary``, ``view``: reports of the state;
* ``tasks``: the task and batch lifecycle;
* ``graph``: a batch's task graph; ``retry``: failed attempts and backoff;
* ``models``: model load policy; ``results``: results from workers;
  ``stopping``: timeouts, the abort and kill stages, cancelling;
* ``goal``: goal-driven rounds; ``liveness``: workers going away;
  ``meta``: meta tasks;
* ``submit``: plans in; ``foreach``: template expansion; ``dispatch``: work
  to workers;
* ``core``: ``step``, the message and event tables, and the wiring of the
  goal policy into the lifecycle (``Ctx.goal_policy``);
* ``journal``, ``trace``, ``diskfull``, ``service``: the shell around the core.
"""
