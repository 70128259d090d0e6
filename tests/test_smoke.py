async def test_owner_sees_own_profile(org):
    response = await org.owner.client.get("/api/v1/users/me/")
    assert response.status_code == 200
    body = response.json()
    assert body["email"] == org.owner.email
    assert body["role"]["key"] == "owner"
    assert body["tenant_slug"] == org.slug
