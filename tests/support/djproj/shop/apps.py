from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "tests.support.djproj.shop"
    label = "djshop"
