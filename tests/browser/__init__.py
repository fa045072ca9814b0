"""Real-browser tests of messagio_admin: Debian's Chromium driven by Playwright."""
