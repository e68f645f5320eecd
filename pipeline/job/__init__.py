"""The Beam job: configuration, the launcher, units, journal, the run's stages, writers, manifest, progress."""
