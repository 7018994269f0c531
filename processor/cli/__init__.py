"""Every `flowhook` command (click). The commands import the logic; nothing imports this package."""
