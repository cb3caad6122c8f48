"""A small Django project for the tests of apitokens.django and apitokens.drf."""
