vcl 4.1;
# The benchmark's backend pod: varnishd answering every request itself (synth), so the
# backend costs a few microseconds and the same for every variant measured.
backend default none;

sub vcl_recv {
    return (synth(200));
}

sub vcl_synth {
    set resp.http.Content-Type = "text/plain";
    set resp.http.X-Pod = "bench-0";
    if (req.url ~ "^/static/") {
        set resp.http.Cache-Control = "public, max-age=300";
    } else {
        set resp.http.Cache-Control = "no-store";
    }
    set resp.body = "bench-0 " + req.url + {"
"};
    return (deliver);
}
