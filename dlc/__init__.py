"""dlc: a graph-first declarative deep-learning model compiler."""
