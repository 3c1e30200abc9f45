/*
 * Real work from a Maven Central library: renders Markdown to HTML with
 * commonmark-java (CommonMark + GitHub tables), raw HTML in the input
 * escaped, so nginx can serve user-written Markdown safely.
 *
 *   ngx.load_ffi("ffi_java", "demo.markdown.Render,init,")
 *   local ok, html = rt:render("# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |")
 *
 * The handler is sync: the parser and renderer are thread-safe and
 * reusable, so every poller thread shares one of each.
 */
package demo.markdown;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.function.Function;
import org.commonmark.Extension;
import org.commonmark.ext.gfm.tables.TablesExtension;
import org.commonmark.parser.Parser;
import org.commonmark.renderer.html.HtmlRenderer;

public class Render {
    public static Function<byte[], byte[]> init(String cfg) {
        List<Extension> ext = List.of(TablesExtension.create());
        Parser parser = Parser.builder().extensions(ext).build();
        HtmlRenderer renderer = HtmlRenderer.builder().extensions(ext).escapeHtml(true).build();
        return req -> {
            String md = req == null ? "" : new String(req, StandardCharsets.UTF_8);
            return renderer.render(parser.parse(md)).getBytes(StandardCharsets.UTF_8);
        };
    }
}
