"""Notes: each user's own short notes, behind the API."""
