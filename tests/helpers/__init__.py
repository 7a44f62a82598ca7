"""Helpers that tests in several folders share, importable by module name
(``from tests.helpers.board import make_results``); fixtures stay in the conftest files.

- :mod:`tests.helpers.fakehub`: a fake Hugging Face Hub on 127.0.0.1 and a tiny built
  dataset folder to serve from it;
- :mod:`tests.helpers.board`: a tiny synthetic leaderboard (results files, predictions,
  board config) written through the results schema;
- :mod:`tests.helpers.hostile`: hostile submissions for the leaderboard's validation tests;
- :mod:`tests.helpers.hubcli`: the board's command line and a Hub client in subprocesses
  pointed at the fake Hub;
- :mod:`tests.helpers.hidden`: the hidden track's throwaway method packages, hand-made seasons
  and evaluations, and the sandbox's skip (CI=true: fail);
- :mod:`tests.helpers.files`: a private ``datasets`` cache, edited weights folders, the
  benchmark scripts as modules, disc phantoms.
"""
