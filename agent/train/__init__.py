"""The training room: `ovq train`'s trainer and its config. Imports model/ and tasks/."""
