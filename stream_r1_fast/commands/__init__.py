"""The jobs of the ``stream-r1`` command line (:mod:`stream_r1_fast.cli` holds its parser and
``main``): ``generate`` and ``batch`` (``--prompts``), ``train``, the checks of inputs made before
any model loads, the schedule and prompt files read, the videos written, and how errors are
reported."""
