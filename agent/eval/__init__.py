"""The evaluation room: recall on generated tasks, side-by-side comparison, probe suites. Imports
model/ and tasks/."""
