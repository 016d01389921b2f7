#include <string.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include "ws_handshake.h"

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

void ws_accept_for_key(const char *key, size_t len, char out[WS_ACCEPT_LEN + 1])
{
	unsigned char digest[SHA_DIGEST_LENGTH];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();

	EVP_DigestInit_ex(ctx, EVP_sha1(), NULL);
	EVP_DigestUpdate(ctx, key, len);
	EVP_DigestUpdate(ctx, ws_guid, sizeof(ws_guid) - 1);
	EVP_DigestFinal_ex(ctx, digest, NULL);
	EVP_MD_CTX_free(ctx);
	EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
}

/* Base64 of exactly 16 bytes: 22 alphabet characters then "==", and the
 * last character carries only 2 bits, so its low 4 bits must be zero. */
static bool valid_key(struct http_str k)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

	if (k.len != 24 || k.p[22] != '=' || k.p[23] != '=')
		return false;
	for (size_t i = 0; i < 22; i++)
		if (!k.p[i] || !strchr(alphabet, k.p[i]))
			return false;
	return (strchr(alphabet, k.p[21]) - alphabet) % 16 == 0;
}

int ws_request_check(const struct http_head *req, char accept_out[WS_ACCEPT_LEN + 1])
{
	int key, ver;

	if (!http_header_has_token(req, "Upgrade", "websocket"))
		return 0;
	if (!http_str_ieq(req->method, "GET") || req->version_minor != 1 ||
	    !http_header_has_token(req, "Connection", "upgrade"))
		return -400;
	key = http_header_find(req, "Sec-WebSocket-Key", 0);
	if (key < 0 || http_header_find(req, "Sec-WebSocket-Key", key + 1) >= 0 ||
	    !valid_key(req->headers[key].value))
		return -400;
	ver = http_header_find(req, "Sec-WebSocket-Version", 0);
	if (ver < 0)
		return -400;
	if (http_header_count(req, "Sec-WebSocket-Version") != 1 ||
	    !http_str_ieq(req->headers[ver].value, "13"))
		return -426;
	ws_accept_for_key(req->headers[key].value.p, req->headers[key].value.len, accept_out);
	return 1;
}

bool ws_response_accepts(const struct http_head *resp, const char *expected_accept)
{
	int acc = http_header_find(resp, "Sec-WebSocket-Accept", 0);

	return resp->status == 101 && acc >= 0 &&
	       http_header_find(resp, "Sec-WebSocket-Accept", acc + 1) < 0 &&
	       http_header_count(resp, "Upgrade") == 1 &&
	       http_str_ieq(resp->headers[http_header_find(resp, "Upgrade", 0)].value, "websocket") &&
	       http_header_has_token(resp, "Connection", "upgrade") &&
	       resp->headers[acc].value.len == WS_ACCEPT_LEN &&
	       !memcmp(resp->headers[acc].value.p, expected_accept, WS_ACCEPT_LEN);
}
