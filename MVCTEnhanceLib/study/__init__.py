"""The evaluation study: test cases, methods, statistics, report and figures, the training-set-size study. Above training, synth and engine."""
