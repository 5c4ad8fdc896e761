"""The admin API and dashboard, an aiohttp sub-application served by the gateway."""

from admin.app import PREFIX, make_admin_app, mount_admin
from admin.settings import AdminSettings

__all__ = ["PREFIX", "AdminSettings", "make_admin_app", "mount_admin"]
